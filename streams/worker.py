"""Entry point of one ledger worker process: metrics endpoint, then the Faust worker."""

from __future__ import annotations

import logging

from faust import Worker
from prometheus_client import start_http_server

from aidcore.settings import StackSettings, WorkerSettings
from streams.app import create_app


def run_worker(stack: StackSettings, worker: WorkerSettings, index: int = 0) -> None:
    start_http_server(worker.metrics_port + index, addr=stack.metrics_addr)
    app, _ = create_app(stack, worker)
    Worker(app, loglevel=stack.log_level.lower(), quiet=True, redirect_stdouts=False).execute_from_commandline()
    logging.getLogger(__name__).info("worker %d stopped", index)
