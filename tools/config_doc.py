"""Write docs/configuration.md from the config (``detector.cli.config_doc``)."""
from detector.cli.config_doc import main

if __name__ == "__main__":
    main()
