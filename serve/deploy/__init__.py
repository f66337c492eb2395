"""The Ray Serve shell around the core: the application builder, the three deployments and what they share.

``app`` builds the graph Ingress -> BufferManager -> Whisper; ``ingress`` and ``socket_stream`` hold the WebSockets;
``buffer_manager`` and ``whisper`` move the core's decode jobs; ``metrics`` (Prometheus) and ``retry`` (dead
replicas, timeouts) serve all three. Nothing here decides anything the core could.
"""
