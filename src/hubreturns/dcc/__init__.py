"""The DCC side: settings, rules, the SMKI repository, the store, the request path,
the HTTP service, the Service Desk and logistics, and the operator's commands."""
