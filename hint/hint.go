package hint

import (
	"errors"
	"fmt"
	"strings"
)

// Error is an error that a change of one setting fixes.
type Error struct {
	Err error
	// Setting is the setting's name in the library's configuration: a
	// Config field, such as "InstanceID".
	Setting string
	// Fix says what to do, %s standing for the setting's name: "give each
	// process its own %s".
	Fix string
}

func (e *Error) Error() string { return e.Render(nil) }

// Unwrap returns the error the setting fixes.
func (e *Error) Unwrap() error { return e.Err }

// Render says e with the setting named by name (nil: the library's name).
func (e *Error) Render(name func(setting string) string) string {
	s := e.Setting
	if name != nil {
		s = name(s)
	}
	return e.Err.Error() + " (" + fmt.Sprintf(e.Fix, s) + ")"
}

// Render says err with every setting a hint names named by name: a *Error
// at the top of err, or at the top of any error errors.Join put in it; the
// rest as err.Error() says it.
func Render(err error, name func(setting string) string) string {
	var h *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &h) && error(h) == err:
		return h.Render(name)
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var lines []string
		for _, e := range j.Unwrap() {
			if e != nil {
				lines = append(lines, Render(e, name))
			}
		}
		return strings.Join(lines, "\n")
	}
	return err.Error()
}
