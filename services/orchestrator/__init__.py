"""The orchestrator: where an ``audio.submitted`` event becomes ``audio.captioned``.

Its Serve deployment (:mod:`.deployment`, named ``Ingress`` in Serve: it is also the
application's HTTP ingress) consumes the ``LISTENPOST_IN`` stream, drives the Preprocessor
and the Captioner through Serve handles (:mod:`.pipeline`, plain async code tested without
Ray), publishes ``audio.captioned`` and acks the input only once that is stored. It is the
one package above the deployments it drives.
"""
