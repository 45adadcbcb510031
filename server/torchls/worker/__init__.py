"""The worker: the only code that imports torch or runs the user's code.

`torchls.worker.main` is the child process itself; it is started by `torchls.worker.client`, which
lives in the language server and therefore imports nothing heavy.
"""
