"""One adapter per place a job runs (local Docker, Vertex AI, Kubernetes). No Prefect here."""
