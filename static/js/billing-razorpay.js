// Opens Razorpay Checkout for the subscription on this page and hands its signed
// result to our server, which verifies it before granting anything.
(function () {
  "use strict";
  var box = document.getElementById("rzp-checkout");
  var form = document.getElementById("rzp-result");
  if (!box || !form || typeof window.Razorpay !== "function") return;
  function open() {
    var checkout = new window.Razorpay({
      key: box.dataset.key,
      subscription_id: box.dataset.subscription,
      name: "BudgetLLM",
      description: box.dataset.description,
      prefill: { email: box.dataset.email },
      handler: function (result) {
        form.elements.razorpay_payment_id.value = result.razorpay_payment_id;
        form.elements.razorpay_subscription_id.value = result.razorpay_subscription_id;
        form.elements.razorpay_signature.value = result.razorpay_signature;
        form.submit();
      },
    });
    checkout.open();
  }
  document.getElementById("rzp-pay").addEventListener("click", open);
  open();
})();
