"""Other vendors' streaming protocols (dialects) spoken over the same stream core, without I/O.

Each dialect translates its client messages into what protocol v1's ``StreamProtocol`` takes (audio, a turn end,
the end of the stream) and the stream's ``partial``/``final`` results back into its own server messages. The
limits, the calls to the BufferManager and the engine are protocol v1's; only the wire shapes differ:
- ``deepgram``: Deepgram's live ``/v1/listen`` (``Results``, ``SpeechStarted``, ``UtteranceEnd``, ``Metadata``);
- ``realtime``: OpenAI's Realtime transcription session (``session.*``, ``input_audio_buffer.*``,
  ``conversation.item.input_audio_transcription.*``).
"""
