"""Where inputs live and how bytes move: provider uploads (``uploads``), the one streaming
download with its safety checks (``fetch``, ``bodies``), and URL checks (``urls``)."""
