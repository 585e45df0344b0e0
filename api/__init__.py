"""The REST API under ``/api/v1/`` (Django REST framework, OpenAPI by drf-spectacular): annotation
endpoints for scripted annotators and external frontends, imports and streaming exports of preference
data. Views parse, call a service, and serialise; no domain logic lives here."""
