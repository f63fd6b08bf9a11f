"""The entry points: the `trainlab` command line (`cli`) and one thin module per command, each turning its
arguments into a library call and its errors into one line and an exit code."""
