"""``python -m memory_svc``: run the memory service on its own."""

from ciq_runtime.service_main import ProcessParts, run_service
from memory_svc.component import build_component

if __name__ == "__main__":
    run_service(service_name="memory", build=lambda s: ProcessParts([build_component(s)]))
