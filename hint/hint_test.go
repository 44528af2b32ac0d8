package hint_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/klagg/klagg/hint"
)

func TestRender(t *testing.T) {
	fenced := &hint.Error{Err: errors.New("processor: fenced"), Setting: "InstanceID", Fix: "give each process its own %s"}
	flags := func(s string) string { return map[string]string{"InstanceID": "--instance-id"}[s] }
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"the library's names", fenced, "processor: fenced (give each process its own InstanceID)"},
		{"nil", nil, ""},
		{"plain", errors.New("processor: no brokers"), "processor: no brokers"},
		{"joined", errors.Join(errors.New("a"), fenced), "a\nprocessor: fenced (give each process its own --instance-id)"},
		{"wrapped in more text: as it says itself", fmt.Errorf("start: %w", fenced), "start: processor: fenced (give each process its own InstanceID)"},
	} {
		names := flags
		if tc.name == "the library's names" {
			names = nil
		}
		if got := hint.Render(tc.err, names); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if !errors.Is(fenced, fenced.Err) {
		t.Error("a hint does not unwrap to its error")
	}
}
