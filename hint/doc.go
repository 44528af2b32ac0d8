// Package hint lets an error say which setting fixes it, by the name the
// library gives the setting (its Config field), so that a program with its
// own names for settings renders the fix in them: klagg's command line
// says --instance-id where processor says InstanceID. Libraries return a
// *Error outermost (never wrapped in more text), so that a program can
// render it whole; Error() says it with the library's name.
package hint
