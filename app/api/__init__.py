"""The HTTP API served by every worker (registered on the Faust app by ``app.views``).

- ``models``: pydantic request and response models, and the checks that turn a request into a
  command (no Faust, no Kafka: unit-testable);
- ``routing``: which worker owns a job id's partition, and forwarding requests to it;
- ``handlers``: what each endpoint does, framework-free (a :class:`~app.api.models.Reply` out);
- ``compat``: the go-delayqueue endpoints, translated onto the native ones;
- ``openapi``: the OpenAPI 3 document, generated from the models.
"""
