"""The span export helper process: `python -m gateway.telemetry.export_worker` (its spec in $GATEWAY_SPAN_EXPORT_SPEC).

Started by `export.ProcessSender`, one per loaded policy; reads pickled span batches on stdin,
exports them with the OTLP exporter and answers on stdout (see `export.serve`). It exits when its
stdin closes (the gateway stopped, or died: nothing outlives it), after exporting what it holds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the gateway, which then closes our stdin
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s otlp-export: %(message)s")
    from gateway.telemetry.export import SPEC_ENV, serve

    serve(json.loads(os.environ[SPEC_ENV]), sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
