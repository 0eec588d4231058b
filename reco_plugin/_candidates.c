/* A next-item trial's candidates (ranker.trial_tops), compiled.

   tops(sources, lists, exclude, target, top, k, depth)
       -> (tops, hits, candidate ids), as ranker.trial_tops returns them, or
       None where this walk leaves the work to Python's: arguments of other
       types than the job passes (sources a list of (strategy, key) tuples,
       lists a dict of lists of (id, score) tuples, exclude a set or a
       frozenset, the sizes ints), a negative or huge size.

   The same walk as the Python loop, over the same objects: each strategy's
   list (``lists[key]``, a list of (product id, score) tuples, as
   ranker.scored_ids makes them) until ``top`` products not in ``exclude``
   (a set) are kept; the same comparisons (set membership, ``==`` with the
   target), so both give the same lists of the same tuples.
   tests/test_ranker.py holds the two equal. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* One strategy's list: its first ``top`` pairs whose id is not excluded (all
   of them for ``top`` 0, as Python's loop); NULL with ``*other_types`` set
   where the list is not of the job's types. */
static PyObject *
kept_of(PyObject *scored, PyObject *exclude, Py_ssize_t top, int *other_types)
{
    if (!PyList_CheckExact(scored)) {
        *other_types = 1;
        return NULL;
    }
    PyObject *kept = PyList_New(0);
    for (Py_ssize_t j = 0; kept != NULL && j < PyList_GET_SIZE(scored); j++) {
        PyObject *pair = PyList_GET_ITEM(scored, j);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            *other_types = 1;
            Py_CLEAR(kept);
            break;
        }
        Py_INCREF(pair); /* (a comparison may run Python code) */
        int excluded = PySet_Contains(exclude, PyTuple_GET_ITEM(pair, 0)), full = 0;
        if (excluded < 0 || (!excluded && PyList_Append(kept, pair) < 0))
            Py_CLEAR(kept);
        else if (!excluded)
            full = PyList_GET_SIZE(kept) == top;
        Py_DECREF(pair);
        if (full)
            break;
    }
    return kept;
}

/* Whether ``target`` is among the ids of the first ``k`` pairs. */
static int
among_first(PyObject *kept, Py_ssize_t k, PyObject *target)
{
    for (Py_ssize_t j = 0; j < k && j < PyList_GET_SIZE(kept); j++) {
        PyObject *id = PyTuple_GET_ITEM(PyList_GET_ITEM(kept, j), 0);
        Py_INCREF(id);
        int equal = PyObject_RichCompareBool(id, target, Py_EQ);
        Py_DECREF(id);
        if (equal != 0)
            return equal;
    }
    return 0;
}

static PyObject *
tops(PyObject *self, PyObject *args)
{
    PyObject *sources, *lists, *exclude, *target, *sizes[3];
    if (!PyArg_ParseTuple(args, "OOOOOOO", &sources, &lists, &exclude, &target, &sizes[0],
                          &sizes[1], &sizes[2]))
        return NULL;
    if (!PyList_CheckExact(sources) || !PyDict_CheckExact(lists) ||
        !(PySet_CheckExact(exclude) || PyFrozenSet_CheckExact(exclude)))
        Py_RETURN_NONE;
    Py_ssize_t size[3];
    for (int i = 0; i < 3; i++) {
        size[i] = PyLong_CheckExact(sizes[i]) ? PyLong_AsSsize_t(sizes[i]) : -1;
        if (size[i] < 0) { /* (or too large) */
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    Py_ssize_t top = size[0], k = size[1], depth = size[2];
    int other_types = 0; /* the walk is left to Python */
    PyObject *found = PyList_New(0), *hits = PyList_New(0), *ids = PyDict_New();
    if (found == NULL || hits == NULL || ids == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(sources); i++) {
        PyObject *source = PyList_GET_ITEM(sources, i);
        if (!PyTuple_CheckExact(source) || PyTuple_GET_SIZE(source) != 2) {
            other_types = 1;
            goto fail;
        }
        Py_INCREF(source);
        PyObject *strategy = PyTuple_GET_ITEM(source, 0), *key = PyTuple_GET_ITEM(source, 1);
        PyObject *scored = PyDict_GetItemWithError(lists, key);
        if (scored == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, key);
            Py_DECREF(source);
            goto fail;
        }
        Py_INCREF(scored);
        PyObject *kept = kept_of(scored, exclude, top, &other_types);
        Py_DECREF(scored);
        PyObject *first = kept ? PyList_GetSlice(kept, 0, depth) : NULL;
        int hit = 0, failed = first == NULL;
        if (!failed && PyList_GET_SIZE(kept) > 0) {
            hit = among_first(kept, k, target);
            PyObject *judged = hit < 0 ? NULL : Py_BuildValue("(OO)", strategy, hit ? Py_True : Py_False);
            failed = judged == NULL || PyList_Append(hits, judged) < 0;
            Py_XDECREF(judged);
        }
        PyObject *entry = failed ? NULL : PyTuple_Pack(2, strategy, first);
        failed = failed || entry == NULL || PyList_Append(found, entry) < 0;
        Py_XDECREF(entry);
        /* candidate_ids: every kept id, in the order first met */
        for (Py_ssize_t j = 0; !failed && j < PyList_GET_SIZE(first); j++)
            failed = PyDict_SetDefault(ids, PyTuple_GET_ITEM(PyList_GET_ITEM(first, j), 0),
                                       Py_None) == NULL;
        Py_XDECREF(first);
        Py_XDECREF(kept);
        Py_DECREF(source);
        if (failed)
            goto fail;
    }
    PyObject *result = PyTuple_Pack(3, found, hits, ids);
    Py_DECREF(found);
    Py_DECREF(hits);
    Py_DECREF(ids);
    return result;
fail:
    Py_XDECREF(found);
    Py_XDECREF(hits);
    Py_XDECREF(ids);
    if (other_types && !PyErr_Occurred())
        Py_RETURN_NONE;
    return NULL;
}

static PyMethodDef methods[] = {
    {"tops", tops, METH_VARARGS,
     "tops(sources, lists, exclude, target, top, k, depth) -> (tops, hits, candidate ids)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_candidates", "A next-item trial's candidates, compiled.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__candidates(void)
{
    return PyModule_Create(&module);
}
