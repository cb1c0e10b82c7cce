package bench

import (
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/netshape"
)

// The chart draws one bar per workload and mode, as long as its median
// cold start is against the longest, in text and as SVG.
func TestColdStartChart(t *testing.T) {
	rep := &ColdStartReport{Link: netshape.Link{BytesPerSecond: 100e6 / 8, RTT: 20 * time.Millisecond}, Rows: []ColdStartRow{
		{Workload: "hello", Mode: ModeOptimized, Cold: []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}, Bytes: []int64{5e6}},
		{Workload: "hello", Mode: ModePodman, Cold: []time.Duration{20 * time.Second}, Bytes: []int64{190e6}},
		{Workload: "hello", Mode: ModeFull, Skipped: "not here"},
	}}
	text := rep.Chart()
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, "█") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("chart has %d bars, want 2:\n%s", len(lines), text)
	}
	if a, b := strings.Count(lines[0], "█"), strings.Count(lines[1], "█"); a != 5 || b != 50 {
		t.Errorf("bars of 2 s and 20 s are %d and %d long, want 5 and 50:\n%s", a, b, text)
	}
	if !strings.Contains(text, "2.00 s") || !strings.Contains(text, "190.0 MB") {
		t.Errorf("chart lacks the figures:\n%s", text)
	}
	var svg struct {
		Rects []struct {
			Width int `xml:"width,attr"`
		} `xml:"rect"`
	}
	if err := xml.Unmarshal(rep.SVG(), &svg); err != nil {
		t.Fatalf("SVG: %v", err)
	}
	if len(svg.Rects) != 3 || svg.Rects[1].Width != 52 || svg.Rects[2].Width != 520 { // the background, then the bars
		t.Errorf("SVG rects: %+v", svg.Rects)
	}
	if !strings.Contains(rep.Markdown(), "```text\n"+text) {
		t.Errorf("the report does not hold the chart")
	}
}
