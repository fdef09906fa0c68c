"""Console: the operator's web page at ``/ui`` — plain HTML, CSS and ES modules shipped in the
package (no CDN, no build step, nothing fetched from outside), a client of the documented JSON API."""
