"""The only importer of huggingface_hub: the client, resolving revisions, the Hub byte source."""
