"""The web app (Gradio): train, keep, compose, generate and evaluate concepts in the browser.

`main(argv)` serves it (`python app.py`, `bora-diffusion app`); `create(...)` builds it without serving, for
tests and scripts. The modules split by concern: `storage` (the data folder and upload checks), `jobs` (the
training queue), `models` (pipelines), `training` / `library` / `compose` / `evaluate` (each tab's logic),
`handlers` (the named endpoints), `calls` (malformed calls refused in words), `ui` (the layout), `server`
(options and launch).
"""

from .server import create, launch, main

__all__ = ["create", "launch", "main"]
