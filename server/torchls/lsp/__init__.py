"""Protocol glue: handlers receive a request, call one function of the core, convert the result."""
