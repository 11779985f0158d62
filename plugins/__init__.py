"""optkit's standard plugins, installed as ``optkit_plugins`` and registered through the
``optkit`` entry-point group exactly as a third-party package registers its own."""
