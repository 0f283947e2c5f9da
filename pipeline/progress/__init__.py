"""Progress of a batch: frozen events and the reporter protocol (``events``), a tqdm bar
(``bar``) and plain lines for logs (``lines``)."""
