# boot.py: runs first on every reset. Nothing here can fail: a broken boot.py needs a reflash.
# The node itself starts in main.py; lib/ (fieldhub_node, drivers) is on MicroPython's sys.path.
import gc

gc.collect()
