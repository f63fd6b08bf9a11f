"""Dataset chores as library functions, one module each: `subset` (a reproducible class/image subset),
`check` (info and check), `stats` (per-channel mean/std). The packer is `trainlab.data.pack`; the
`trainlab data` command over them is `trainlab.commands.data`."""
