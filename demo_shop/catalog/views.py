from decimal import Decimal

from django.core.paginator import Paginator
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .models import Cart, CartLine, Order, OrderLine, Product

CART_KEY = "cart_id"


def catalog(request):
    products = Product.objects.all()
    category = request.GET.get("category")
    if category:
        products = products.filter(category=category)
    query = request.GET.get("q", "").strip()[:100]
    if query:
        products = products.filter(name__icontains=query)
    page = Paginator(products, 48).get_page(request.GET.get("page"))
    categories = Product.objects.order_by("category").values_list("category", flat=True).distinct()
    return render(
        request,
        "shop/catalog.html",
        {"page": page, "categories": categories, "category": category, "query": query},
    )


def product_detail(request, pk):
    product = get_object_or_404(Product, pk=pk)
    return render(request, "shop/product.html", {"product": product})


def _cart(request, create=False):
    """The session's cart (claimed by the user once they log in)."""
    cart = Cart.objects.filter(pk=request.session.get(CART_KEY)).first()
    user = request.user if request.user.is_authenticated else None
    if cart is None and create:
        cart = Cart.objects.create(user=user)
        request.session[CART_KEY] = cart.pk
    elif cart is not None and cart.user_id is None and user is not None:
        cart.user = user
        cart.save(update_fields=["user"])
    return cart


@require_POST
def add_to_cart(request, pk):
    product = get_object_or_404(Product, pk=pk)
    with transaction.atomic():
        line, created = CartLine.objects.select_for_update().get_or_create(
            cart=_cart(request, create=True),
            product=product,
            defaults={"unit_price": product.price},
        )
        if not created:
            line.quantity += 1
            line.save(update_fields=["quantity"])
    return redirect("cart")


@require_POST
def remove_from_cart(request, pk):
    cart = _cart(request)
    if cart is not None:
        cart.lines.filter(product_id=pk).delete()
    return redirect("cart")


def _cart_lines(request):
    cart = _cart(request)
    lines = list(cart.lines.select_related("product")) if cart is not None else []
    total = sum((line.total for line in lines), Decimal("0"))
    return lines, total


def cart(request):
    lines, total = _cart_lines(request)
    return render(request, "shop/cart.html", {"lines": lines, "total": total})


def checkout(request):
    lines, total = _cart_lines(request)
    if request.method == "POST" and lines:
        with transaction.atomic():
            order = Order.objects.create(
                user=request.user if request.user.is_authenticated else None, total=total
            )
            # One save per line: bulk_create sends no signals.
            for line in lines:
                OrderLine.objects.create(
                    order=order,
                    product=line.product,
                    quantity=line.quantity,
                    unit_price=line.unit_price,
                )
            for line in lines:
                line.delete()
        return render(request, "shop/thanks.html", {"order": order, "lines": lines, "total": total})
    return render(request, "shop/checkout.html", {"lines": lines, "total": total})
