"""``python -m extraction_svc``: run the ExtractionService and the job worker on their own.

``python -m extraction_svc dead-letters …`` runs the operator commands instead
(:mod:`extraction_svc.cli`).
"""

import sys

if __name__ == "__main__":
    if len(sys.argv) > 1:
        from extraction_svc.cli import main

        sys.exit(main(sys.argv[1:]))
    from ciq_runtime.service_main import ProcessParts, run_service
    from extraction_svc.component import build_component

    run_service(service_name="extraction", build=lambda s: ProcessParts([build_component(s)]))
