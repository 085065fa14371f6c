"""Servers the broker is measured against.

``tutorial_chat`` runs as ``python -m benchmarks.peers.tutorial_chat``; ``node_ws/`` is a Node.js
package run with ``node server.js``, whose ``ws`` dependency ``node.ensure_installed`` installs.
"""
