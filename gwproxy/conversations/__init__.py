"""Conversations: the API over what capture stored (list, read, search, branch, export, usage) and
``POST /api/chat``, the original gateway's chat endpoint, which threads a conversation's history in."""
