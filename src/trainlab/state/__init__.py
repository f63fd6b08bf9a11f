"""What survives a process: the checkpoint format and its safe loading (`checkpoint`), which files a run
dir keeps (`retention`), the rules of continuing a run (`resume`) and stop signals (`stops`)."""
