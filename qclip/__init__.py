"""qclip command-line package: `qclip eval | pretrain-demo` (more commands come with their libraries)."""
