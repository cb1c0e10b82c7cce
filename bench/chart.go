package bench

import (
	"fmt"
	"html"
	"strings"
	"time"
)

// coldBar is one bar of the cold-start chart: per workload, each
// mode's median cold start and bytes fetched, in the report's order.
type coldBar struct {
	mode  string
	cold  time.Duration
	bytes int64
}

func (r *ColdStartReport) bars() ([]string, map[string][]coldBar, time.Duration) {
	var workloads []string
	bars := map[string][]coldBar{}
	var longest time.Duration
	for _, row := range r.Rows {
		if row.Skipped != "" || len(row.Cold) == 0 {
			continue
		}
		if _, ok := bars[row.Workload]; !ok {
			workloads = append(workloads, row.Workload)
		}
		b := coldBar{mode: row.Mode, cold: median(row.Cold), bytes: medianInt(row.Bytes)}
		bars[row.Workload] = append(bars[row.Workload], b)
		longest = max(longest, b.cold)
	}
	return workloads, bars, longest
}

// Chart draws the cold starts as text bars, one per workload and mode,
// scaled to the longest.
func (r *ColdStartReport) Chart() string {
	workloads, bars, longest := r.bars()
	if longest == 0 {
		return ""
	}
	const width = 50
	var b strings.Builder
	fmt.Fprintf(&b, "cold start, %.0f Mbit/s and %v round trip (bar: time; then bytes fetched)\n", float64(r.Link.BytesPerSecond)*8/1e6, r.Link.RTT)
	for _, w := range workloads {
		fmt.Fprintf(&b, "\n%s\n", w)
		for _, bar := range bars[w] {
			n := max(1, int(float64(width)*bar.cold.Seconds()/longest.Seconds()+0.5))
			fmt.Fprintf(&b, "  %-22s %-*s %6.2f s %7.1f MB\n", bar.mode, width, strings.Repeat("█", n), bar.cold.Seconds(), float64(bar.bytes)/1e6)
		}
	}
	return b.String()
}

// SVG draws the same chart as an image, for bench/RESULTS.md.
func (r *ColdStartReport) SVG() []byte {
	workloads, bars, longest := r.bars()
	if longest == 0 {
		return nil
	}
	colors := map[string]string{ModeOptimized: "#1b7837", ModeLazy: "#5aae61", ModeFull: "#7b3294", ModePodman: "#999999"}
	const (
		left, barH, gap, plotW = 190, 16, 4, 520
	)
	rows := 0
	for _, w := range workloads {
		rows += len(bars[w]) + 1
	}
	height := 40 + rows*(barH+gap) + 20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", left+plotW+150, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", left+plotW+150, height)
	fmt.Fprintf(&b, `<text x="10" y="20" font-size="14">Cold start to the workload's exit, %.0f Mbit/s, %v round trip (bytes fetched after each bar)</text>`+"\n",
		float64(r.Link.BytesPerSecond)*8/1e6, r.Link.RTT)
	y := 40
	for _, w := range workloads {
		fmt.Fprintf(&b, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y+barH-4, html.EscapeString(w))
		y += barH + gap
		for _, bar := range bars[w] {
			wdt := max(1, int(float64(plotW)*bar.cold.Seconds()/longest.Seconds()))
			color := colors[bar.mode]
			if color == "" {
				color = "#4575b4"
			}
			fmt.Fprintf(&b, `<text x="20" y="%d">%s</text>`+"\n", y+barH-4, html.EscapeString(bar.mode))
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", left, y, wdt, barH, color)
			fmt.Fprintf(&b, `<text x="%d" y="%d">%.2f s, %.1f MB</text>`+"\n", left+wdt+6, y+barH-4, bar.cold.Seconds(), float64(bar.bytes)/1e6)
			y += barH + gap
		}
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}
