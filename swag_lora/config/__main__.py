"""python -m swag_lora.config [--write [docs/configuration.md]]: print (or write) the configuration table."""
import sys

from swag_lora.config.docs import markdown_table, write_docs
from swag_lora.config.parse import CONF

if sys.argv[1:2] == ["--write"]:
    write_docs(sys.argv[2] if len(sys.argv) > 2 else CONF.parents[1] / "docs" / "configuration.md")
else:
    print(markdown_table())
