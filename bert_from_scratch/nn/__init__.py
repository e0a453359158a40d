"""The numerical building blocks: array module, reference layers, attention, gradient checking, backends."""
