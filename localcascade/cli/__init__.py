"""The command line: thin commands over the layers below.

Each command lives in its own module here, parses its options, calls one
function of the layer below and renders the result. Heavy libraries
(llama_cpp, huggingface_hub) are imported inside command bodies only, so
``localcascade --help`` stays fast. Errors are typed exceptions
(``localcascade.errors``) turned into one-line messages and exit codes in
``main.py`` and nowhere else. This package's ``__init__`` imports nothing: a command
module that imports a sibling must not import the modules that import it.
"""
