"""Build-time generators: the man pages and the bash completion, written from the parser and the config model
(`make man`, `make deb`). Nothing that runs imports them."""
