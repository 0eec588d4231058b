/* The ranker's two loops over packed examples (ranker.Examples), compiled.

   learn(z, n, labels, starts, indices, values, alpha, beta, l1, l2)
       One FTRL-Proximal step per example, in the order given, on the lists
       z and n (changed in place); the number of examples learnt.
   logits(weights, starts, indices, values)
       Each example's logit under weights, as a list.

   Each is ranker.py's Python loop written again with the same floating-point
   operations in the same order (double precision, no fused multiply-add: the
   build passes -ffp-contract=off), so both give the same floats to the bit;
   tests/test_ranker.py holds them equal. The Python loops stay as the
   fallback where this module was not built. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

/* A read-only view of a buffer of ``itemsize``-byte items of ``format``. */
static int
get_view(PyObject *obj, Py_buffer *view, const char *format, Py_ssize_t itemsize,
         const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->itemsize != itemsize || view->format == NULL ||
        strcmp(view->format, format) != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected items of format '%s' and %zd bytes",
                     name, format, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The packed examples: where each starts in indices and values, and the
   (index, value) pairs, checked against a model of ``features`` coordinates. */
typedef struct {
    Py_buffer starts, indices, values;
    Py_ssize_t count;   /* examples */
    Py_ssize_t longest; /* the most pairs one example holds */
} Packed;

static void
release_packed(Packed *p)
{
    PyBuffer_Release(&p->starts);
    PyBuffer_Release(&p->indices);
    PyBuffer_Release(&p->values);
}

static int
get_packed(Packed *p, PyObject *starts, PyObject *indices, PyObject *values,
           Py_ssize_t features)
{
    memset(p, 0, sizeof(*p));
    if (get_view(starts, &p->starts, "I", sizeof(unsigned int), "starts") < 0)
        return -1;
    if (get_view(indices, &p->indices, "H", sizeof(unsigned short), "indices") < 0) {
        PyBuffer_Release(&p->starts);
        return -1;
    }
    if (get_view(values, &p->values, "d", sizeof(double), "values") < 0) {
        PyBuffer_Release(&p->starts);
        PyBuffer_Release(&p->indices);
        return -1;
    }
    Py_ssize_t nstarts = p->starts.len / (Py_ssize_t)sizeof(unsigned int);
    Py_ssize_t pairs = p->indices.len / (Py_ssize_t)sizeof(unsigned short);
    const unsigned int *s = p->starts.buf;
    const unsigned short *idx = p->indices.buf;
    if (nstarts < 1 || s[0] != 0 || pairs != p->values.len / (Py_ssize_t)sizeof(double) ||
        (Py_ssize_t)s[nstarts - 1] != pairs) {
        PyErr_SetString(PyExc_ValueError,
                        "starts, indices and values do not describe packed examples");
        release_packed(p);
        return -1;
    }
    for (Py_ssize_t j = 1; j < nstarts; j++) {
        if (s[j] < s[j - 1]) {
            PyErr_SetString(PyExc_ValueError, "starts go backwards");
            release_packed(p);
            return -1;
        }
        if ((Py_ssize_t)(s[j] - s[j - 1]) > p->longest)
            p->longest = s[j] - s[j - 1];
    }
    for (Py_ssize_t k = 0; k < pairs; k++) {
        if ((Py_ssize_t)idx[k] >= features) {
            PyErr_Format(PyExc_IndexError, "feature index %d out of range (%zd features)",
                         (int)idx[k], features);
            release_packed(p);
            return -1;
        }
    }
    p->count = nstarts - 1;
    return 0;
}

/* A list of floats (or ints) as a new C array; NULL with an exception set.
   Only exact floats and ints: converting them runs no Python code. */
static double *
to_doubles(PyObject *list, const char *name)
{
    if (!PyList_Check(list)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list", name);
        return NULL;
    }
    Py_ssize_t size = PyList_GET_SIZE(list);
    double *out = PyMem_Malloc((size_t)(size ? size : 1) * sizeof(double));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (PyFloat_CheckExact(item)) {
            out[i] = PyFloat_AS_DOUBLE(item);
        } else if (PyLong_CheckExact(item)) {
            out[i] = PyLong_AsDouble(item);
            if (out[i] == -1.0 && PyErr_Occurred()) {
                PyMem_Free(out);
                return NULL;
            }
        } else {
            PyErr_Format(PyExc_TypeError, "%s must hold numbers", name);
            PyMem_Free(out);
            return NULL;
        }
    }
    return out;
}

/* Writes C arrays back into lists of their sizes, as floats: every float is
   made first, so on failure neither list has changed. */
static int
from_doubles(PyObject *first, const double *first_values, PyObject *second,
             const double *second_values)
{
    Py_ssize_t size = PyList_GET_SIZE(first), total = size + PyList_GET_SIZE(second);
    PyObject **made = PyMem_Malloc((size_t)(total ? total : 1) * sizeof(PyObject *));
    if (made == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < total; i++) {
        made[i] = PyFloat_FromDouble(i < size ? first_values[i] : second_values[i - size]);
        if (made[i] == NULL) {
            while (i--)
                Py_DECREF(made[i]);
            PyMem_Free(made);
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < total; i++) /* PyList_SetItem steals each reference */
        PyList_SetItem(i < size ? first : second, i < size ? i : i - size, made[i]);
    PyMem_Free(made);
    return 0;
}

/* ranker.probability */
static double
probability(double logit)
{
    if (logit >= 0)
        return 1.0 / (1.0 + exp(-logit));
    double e = exp(logit);
    return e / (1.0 + e);
}

static PyObject *
ftrl_learn(PyObject *self, PyObject *args)
{
    PyObject *z_list, *n_list, *labels_obj, *starts, *indices, *values;
    double alpha, beta, l1, l2;
    if (!PyArg_ParseTuple(args, "O!O!OOOOdddd", &PyList_Type, &z_list, &PyList_Type, &n_list,
                          &labels_obj, &starts, &indices, &values, &alpha, &beta, &l1, &l2))
        return NULL;
    Py_ssize_t features = PyList_GET_SIZE(z_list);
    if (PyList_GET_SIZE(n_list) != features) {
        PyErr_SetString(PyExc_ValueError, "z and n differ in length");
        return NULL;
    }
    Packed p;
    if (get_packed(&p, starts, indices, values, features) < 0)
        return NULL;
    Py_buffer labels;
    if (get_view(labels_obj, &labels, "B", 1, "labels") < 0) {
        release_packed(&p);
        return NULL;
    }
    PyObject *result = NULL;
    double *z = NULL, *n = NULL, *roots = NULL, *w = NULL;
    if (labels.len != p.count) {
        PyErr_SetString(PyExc_ValueError, "one label per example is needed");
        goto done;
    }
    z = to_doubles(z_list, "z");
    n = z ? to_doubles(n_list, "n") : NULL;
    roots = PyMem_Malloc((size_t)(features ? features : 1) * sizeof(double));
    /* one example's weights at a time */
    w = PyMem_Malloc((size_t)(p.longest ? p.longest : 1) * sizeof(double));
    if (z == NULL || n == NULL || roots == NULL || w == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    /* the arrays hold ``features`` numbers (getting a buffer may run Python
       code from 3.12 on, and so change the lists) */
    if (PyList_GET_SIZE(z_list) != features || PyList_GET_SIZE(n_list) != features) {
        PyErr_SetString(PyExc_ValueError, "z or n changed size");
        goto done;
    }
    for (Py_ssize_t i = 0; i < features; i++) {
        if (n[i] < 0) { /* as math.sqrt */
            PyErr_SetString(PyExc_ValueError, "math domain error");
            goto done;
        }
        roots[i] = sqrt(n[i]);
    }
    /* Python divides by alpha at an example's first feature */
    if (alpha == 0.0 && p.indices.len > 0) {
        PyErr_SetString(PyExc_ZeroDivisionError, "float division by zero");
        goto done;
    }
    const unsigned int *s = p.starts.buf;
    const unsigned short *idx = p.indices.buf;
    const double *val = p.values.buf;
    const unsigned char *label = labels.buf;
    for (Py_ssize_t j = 0; j < p.count; j++) {
        unsigned int begin = s[j], end = s[j + 1];
        double logit = 0.0;
        for (unsigned int k = begin; k < end; k++) {
            unsigned short i = idx[k];
            double zi = z[i];
            double wi;
            if (fabs(zi) <= l1) {
                wi = 0.0;
            } else {
                double denominator = (beta + roots[i]) / alpha + l2;
                if (denominator == 0.0) { /* as Python's division */
                    PyErr_SetString(PyExc_ZeroDivisionError, "float division by zero");
                    goto done;
                }
                wi = -(zi - (zi > 0 ? l1 : -l1)) / denominator;
            }
            w[k - begin] = wi;
            logit += wi * val[k];
        }
        double gradient = probability(logit) - (double)label[j];
        for (unsigned int k = begin; k < end; k++) {
            unsigned short i = idx[k];
            double g = gradient * val[k];
            double ni = n[i] + g * g;
            double root = sqrt(ni);
            z[i] += g - (root - roots[i]) / alpha * w[k - begin];
            n[i] = ni;
            roots[i] = root;
        }
    }
    if (from_doubles(z_list, z, n_list, n) < 0)
        goto done;
    result = PyLong_FromSsize_t(p.count);
done:
    PyMem_Free(z);
    PyMem_Free(n);
    PyMem_Free(roots);
    PyMem_Free(w);
    PyBuffer_Release(&labels);
    release_packed(&p);
    return result;
}

static PyObject *
ftrl_logits(PyObject *self, PyObject *args)
{
    PyObject *weights_list, *starts, *indices, *values;
    if (!PyArg_ParseTuple(args, "O!OOO", &PyList_Type, &weights_list, &starts, &indices,
                          &values))
        return NULL;
    double *weights = to_doubles(weights_list, "weights");
    if (weights == NULL)
        return NULL;
    Packed p;
    if (get_packed(&p, starts, indices, values, PyList_GET_SIZE(weights_list)) < 0) {
        PyMem_Free(weights);
        return NULL;
    }
    PyObject *result = PyList_New(p.count);
    const unsigned int *s = p.starts.buf;
    const unsigned short *idx = p.indices.buf;
    const double *val = p.values.buf;
    for (Py_ssize_t j = 0; result != NULL && j < p.count; j++) {
        /* ranker.score: the products added in order, from 0 */
        double logit = 0.0;
        for (unsigned int k = s[j]; k < s[j + 1]; k++)
            logit += weights[idx[k]] * val[k];
        PyObject *number = PyFloat_FromDouble(logit);
        if (number == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, j, number);
    }
    PyMem_Free(weights);
    release_packed(&p);
    return result;
}

static PyMethodDef methods[] = {
    {"learn", ftrl_learn, METH_VARARGS,
     "learn(z, n, labels, starts, indices, values, alpha, beta, l1, l2) -> examples learnt"},
    {"logits", ftrl_logits, METH_VARARGS,
     "logits(weights, starts, indices, values) -> each example's logit"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ftrl", "The ranker's loops over packed examples, compiled.", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__ftrl(void)
{
    return PyModule_Create(&module);
}
