"""``python3 -m dcctl.cli``: the dcctl command."""
from dcctl.cli import main

if __name__ == "__main__":
    main()
