"""Writing results and the files around them: reserved output names, no-clobber publishing, the JSON sidecar,
scratch files that a crash cannot leave behind for ever, writes that a second Ctrl-C waits for."""
