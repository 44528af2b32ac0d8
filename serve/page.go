package serve

import (
	"embed"
	"io/fs"
	"net/http"
)

// The chart page and the vendored chart library (lightweight-charts
// 4.2.3, Apache-2.0: its LICENSE and NOTICE are beside it), in the binary:
// nothing is fetched from elsewhere at run time.
//
//go:embed web
var web embed.FS

func pageHandler() http.Handler {
	sub, err := fs.Sub(web, "web")
	if err != nil {
		panic(err) // the embedded tree is part of the build
	}
	return http.FileServerFS(sub)
}
