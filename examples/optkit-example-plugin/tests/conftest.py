# optkit's test kit: the ``optkit_run_pass`` fixture.
pytest_plugins = ["optkit.testing"]
