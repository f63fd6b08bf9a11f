from trainlab.commands.cli import entry

entry()
