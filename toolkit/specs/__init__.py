"""Matrix specs shipped with the package (``mmguard matrix demo`` / ``load_spec("demo")``)."""
