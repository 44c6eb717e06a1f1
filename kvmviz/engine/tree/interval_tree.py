"""An interval tree over inclusive ranges, like the kernel's ``interval_tree``.

Models ``hva_tree`` of ``struct kvm_memslots`` (reference §1.3, §5.3): nodes
ordered by start, each subtree augmented with the largest ``last`` below it,
so a stabbing query costs O(log n + k). The kernel uses an augmented rbtree;
this is an augmented treap whose priorities are a fixed hash of the key, so the
shape depends only on the set of keys (undo restores it exactly).

>>> t = IntervalTree()
>>> t.insert(0x1000, 0x1fff, "a"); t.insert(0x1800, 0x27ff, "b"); t.insert(0x5000, 0x5fff, "c")
>>> [v for _, _, v in t.query(0x1f00, 0x2000)]
['a', 'b']
>>> hex(t.remove(0x1000, "a")), [v for _, _, v in t.query(0, 1 << 64)]
('0x1fff', ['b', 'c'])
"""

_MASK64 = (1 << 64) - 1


def _priority(start, tie):
    # splitmix64-style mixing: deterministic, no seed
    z = (start * 0x9E3779B97F4A7C15 + tie * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class _Node:
    __slots__ = ("key", "last", "value", "prio", "left", "right", "max_last")

    def __init__(self, key, last, value):
        self.key, self.last, self.value = key, last, value
        self.prio = _priority(*key)
        self.left = self.right = None
        self.max_last = last

    def update(self):
        m = self.last
        if self.left is not None and self.left.max_last > m:
            m = self.left.max_last
        if self.right is not None and self.right.max_last > m:
            m = self.right.max_last
        self.max_last = m


def _split(node, key):
    """Split into (keys < key, keys >= key)."""
    if node is None:
        return None, None
    if node.key < key:
        node.right, right = _split(node.right, key)
        node.update()
        return node, right
    left, node.left = _split(node.left, key)
    node.update()
    return left, node


def _merge(a, b):
    if a is None or b is None:
        return a or b
    if a.prio > b.prio:
        a.right = _merge(a.right, b)
        a.update()
        return a
    b.left = _merge(a, b.left)
    b.update()
    return b


class IntervalTree:
    """Inclusive ``[start, last]`` ranges with values; overlaps allowed.

    ``tie(value)`` gives a number that orders equal starts (default: the
    value's hash); it must be stable for the value's lifetime.
    """

    def __init__(self, tie=None):
        self.root = None
        self.size = 0
        self.visited = 0          # nodes visited by queries (cost accounting)
        self._tie = tie or (lambda v: hash(v) & _MASK64)

    def insert(self, start, last, value):
        """Insert ``value`` covering ``[start, last]``: O(log n) expected.

        Walk down while the nodes outrank the new one, split the subtree
        found there around the key (its expected size is O(1)) and hang it
        under the new node; ancestors' ``max_last`` grow to cover it. The
        result is the one treap the keys and priorities define.
        """
        key = (start, self._tie(value))
        node = _Node(key, last, value)
        parent, child, prio = None, self.root, node.prio
        while child is not None and child.prio > prio:
            if child.max_last < last:
                child.max_last = last
            parent, child = child, (child.right if child.key < key else child.left)
        node.left, node.right = _split(child, key)
        node.update()
        if parent is None:
            self.root = node
        elif parent.key < key:
            parent.right = node
        else:
            parent.left = node
        self.size += 1

    def remove(self, start, value):
        """Remove ``value`` inserted at ``start``; returns its ``last``; KeyError if absent. O(log n) expected.

        Find the node, put the merge of its two subtrees in its place, then
        recompute ``max_last`` on the path back to the root.
        """
        key = (start, self._tie(value))
        path, node = [], self.root
        while node is not None and node.key != key:
            path.append(node)
            node = node.right if node.key < key else node.left
        if node is None or node.value is not value:
            raise KeyError(f"{value!r} is not in the interval tree at {start:#x}")
        rest = _merge(node.left, node.right)
        if not path:
            self.root = rest
        elif path[-1].left is node:
            path[-1].left = rest
        else:
            path[-1].right = rest
        for above in reversed(path):
            above.update()
        self.size -= 1
        return node.last

    def query(self, lo, hi):
        """Yield ``(start, last, value)`` for ranges meeting ``[lo, hi]``, by start."""
        stack, node = [], self.root
        while stack or node is not None:
            while node is not None and node.max_last >= lo:
                self.visited += 1
                stack.append(node)
                node = node.left
            if not stack:
                return
            node = stack.pop()
            if node.key[0] > hi:
                return
            if node.last >= lo:
                yield node.key[0], node.last, node.value
            node = node.right

    def __iter__(self):
        return self.query(-1, 1 << 65)

    def __len__(self):
        return self.size

    def height(self):
        """Height of the tree (0 when empty), for plots and tests."""
        def h(n):
            return 0 if n is None else 1 + max(h(n.left), h(n.right))
        return h(self.root)
