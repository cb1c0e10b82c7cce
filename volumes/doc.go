// Package volumes manages named volumes, bind mounts, tmpfs and the
// anonymous volumes an image's config asks for.
package volumes
