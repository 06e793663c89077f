"""Release policies: the model and its load-time checks, field transforms, and the tools for
policy authors (explain, stored test cases). Pure."""
