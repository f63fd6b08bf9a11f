"""One run, start to finish: the epoch loop (`run`), the step (`engine`), building its parts (`build`),
optimizers and LR plans (`optim`), EMA, mixing, process settings (`runtime`), the batch finder and what
`trainlab bench` measures (`bench`)."""
