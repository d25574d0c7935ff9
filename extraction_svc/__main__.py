"""``python -m extraction_svc``: run the ExtractionService and the job worker on their own."""

from ciq_runtime.service_main import ProcessParts, run_service
from extraction_svc.component import build_component

if __name__ == "__main__":
    run_service(service_name="extraction", build=lambda s: ProcessParts([build_component(s)]))
