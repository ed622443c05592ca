"""Print the published-measurement table of docs/performance.md as the speed model gives it now.

    python scripts/speed_table.py
"""

from localcascade.resolve.published_speeds import comparisons, markdown_table

if __name__ == "__main__":
    print("\n".join(markdown_table(comparisons())))
