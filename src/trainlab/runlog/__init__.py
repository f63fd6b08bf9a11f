"""What a run writes for people and tools: the run-dir files (`writer`), the console (`console`) and the
experiment trackers (`trackers/`)."""
