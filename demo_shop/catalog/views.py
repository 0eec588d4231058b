from decimal import Decimal

from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .models import Product

CART_KEY = "cart"


def catalog(request):
    products = Product.objects.all()
    category = request.GET.get("category")
    if category:
        products = products.filter(category=category)
    page = Paginator(products, 48).get_page(request.GET.get("page"))
    categories = Product.objects.order_by("category").values_list("category", flat=True).distinct()
    return render(
        request,
        "shop/catalog.html",
        {"page": page, "categories": categories, "category": category},
    )


def product_detail(request, pk):
    product = get_object_or_404(Product, pk=pk)
    return render(request, "shop/product.html", {"product": product})


@require_POST
def add_to_cart(request, pk):
    product = get_object_or_404(Product, pk=pk)
    cart = request.session.get(CART_KEY, {})
    cart[str(product.pk)] = cart.get(str(product.pk), 0) + 1
    request.session[CART_KEY] = cart
    return redirect("cart")


def _cart_lines(request):
    cart = request.session.get(CART_KEY, {})
    products = Product.objects.in_bulk([int(pk) for pk in cart])
    lines = [(products[int(pk)], qty) for pk, qty in cart.items() if int(pk) in products]
    total = sum((p.price * qty for p, qty in lines), Decimal("0"))
    return lines, total


def cart(request):
    lines, total = _cart_lines(request)
    return render(request, "shop/cart.html", {"lines": lines, "total": total})


def checkout(request):
    lines, total = _cart_lines(request)
    if request.method == "POST" and lines:
        request.session[CART_KEY] = {}
        return render(request, "shop/thanks.html", {"lines": lines, "total": total})
    return render(request, "shop/checkout.html", {"lines": lines, "total": total})
