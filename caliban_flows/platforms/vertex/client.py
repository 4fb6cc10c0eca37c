"""The parts of `aiplatform_v1` we call: the JobService clients, their gRPC transports and
CustomJob, without the 450 other service and type modules its package `__init__`s load (see
`lean_import`): 0.5 s instead of 1.2-1.3 s here.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

from caliban_flows.platforms.lean_import import lean_or_full

# Outermost first: a subpackage's spec is found through its parent's __path__.
DEFERRED_PACKAGES = ("google.cloud.aiplatform_v1", "google.cloud.aiplatform_v1.types")
_SERVICE = "google.cloud.aiplatform_v1.services.job_service"


def _lean() -> SimpleNamespace:
    service = importlib.import_module(_SERVICE)
    return SimpleNamespace(
        JobServiceClient=service.JobServiceClient,
        JobServiceAsyncClient=service.JobServiceAsyncClient,
        JobServiceGrpcTransport=importlib.import_module(
            f"{_SERVICE}.transports.grpc"
        ).JobServiceGrpcTransport,
        JobServiceGrpcAsyncIOTransport=importlib.import_module(
            f"{_SERVICE}.transports.grpc_asyncio"
        ).JobServiceGrpcAsyncIOTransport,
        CustomJob=importlib.import_module("google.cloud.aiplatform_v1.types.custom_job").CustomJob,
    )


def _full() -> SimpleNamespace:
    from google.cloud import aiplatform_v1
    from google.cloud.aiplatform_v1.services.job_service import transports

    return SimpleNamespace(
        JobServiceClient=aiplatform_v1.JobServiceClient,
        JobServiceAsyncClient=aiplatform_v1.JobServiceAsyncClient,
        JobServiceGrpcTransport=transports.JobServiceGrpcTransport,
        JobServiceGrpcAsyncIOTransport=transports.JobServiceGrpcAsyncIOTransport,
        CustomJob=aiplatform_v1.CustomJob,
    )


def job_service() -> SimpleNamespace:
    """JobServiceClient, JobServiceAsyncClient, their gRPC transports, and CustomJob."""
    return lean_or_full(DEFERRED_PACKAGES, _lean, _full)
